//! The network row: cold creates (at the backend) with `egress: none` against the same with
//! `egress: all` (the create plus its network: veth pair, addresses, nftables, DNS forwarder),
//! alternating, on a backend of their own. Skipped, saying why, where the host lacks `nft`.

use std::path::Path;

use traforato_core::network::Policy;

use crate::paired::{Comparison, OwnBackend};
use crate::{Args, BenchError, Row, WARMUP};

const ROW: Comparison = Comparison {
    measure: "cold create with egress all",
    floor: "egress none",
    target: "<= 1.1x none",
    // Network set-up is meant to cost the cold start nothing measurable.
    max_ratio: 1.1,
};

/// Measures the row; `NOT MEASURED` (saying why) without `nft`.
pub async fn egress_row(args: &Args, scratch: &Path) -> Result<Row, BenchError> {
    let has_nft = std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nft {
        say!("  skipped: needs nft (apt-get install nftables)");
        return Ok(ROW.not_measured());
    }
    let own = OwnBackend::start(
        "/run/traforato-startup-network",
        "traforato_startup_network",
        |config| config.oci_dir = Some(scratch.join("network-images")),
    )?;
    let all = Policy::all();
    let measured = async {
        let (mut none, mut with_all) = (Vec::new(), Vec::new());
        for i in 0..WARMUP + args.iterations {
            crate::progress("egress", i, WARMUP + args.iterations);
            let without = own.create("host", None).await?;
            let with = own.create("host", Some(&all)).await?;
            if i >= WARMUP {
                none.push(without);
                with_all.push(with);
            }
        }
        Ok::<_, BenchError>((none, with_all))
    }
    .await;
    own.stop().await;
    let (none, with_all) = measured?;
    ROW.row(
        ("create, egress none", &none),
        ("create, egress all", &with_all),
    )
}
