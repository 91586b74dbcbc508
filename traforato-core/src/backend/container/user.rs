//! The image's `User` (`name`, `uid`, `name:group`, `uid:gid`, as Docker reads it) resolved
//! against the sandbox's own `/etc/passwd` and `/etc/group`, to the ids commands run as.

use super::config::UID_COUNT;
use super::protocol::ExecUser;

/// A resolved user: its ids and, when `/etc/passwd` names it, its home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageUser {
    pub ids: ExecUser,
    pub home: Option<String>,
}

/// Resolves `spec` against the text of `/etc/passwd` and `/etc/group` (either may be empty).
/// A numeric uid not in `/etc/passwd` gets gid 0, as Docker gives it; a name must be there.
pub(crate) fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ImageUser, String> {
    let spec = spec.trim();
    let (user, group_part) = match spec.split_once(':') {
        Some((user, group)) => (user.trim(), Some(group.trim())),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(format!("user {spec:?} names no user"));
    }
    let entry = passwd_entries(passwd).find(|e| match user.parse::<u32>() {
        Ok(uid) => e.uid == uid,
        Err(_) => e.name == user,
    });
    let (uid, mut gid, home) = match (user.parse::<u32>(), entry) {
        (_, Some(e)) => (
            e.uid,
            e.gid,
            Some(e.home.to_string()).filter(|h| h.starts_with('/')),
        ),
        (Ok(uid), None) => (uid, 0, None),
        (Err(_), None) => return Err(format!("user {user:?} is not in the image's /etc/passwd")),
    };
    if let Some(group_part) = group_part.filter(|g| !g.is_empty()) {
        gid = match group_part.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(name, _)| *name == group_part)
                .map(|(_, gid)| gid)
                .ok_or_else(|| format!("group {group_part:?} is not in the image's /etc/group"))?,
        };
    }
    if uid >= UID_COUNT || gid >= UID_COUNT {
        return Err(format!(
            "user {spec:?} is {uid}:{gid}; a sandbox maps ids 0 to {}",
            UID_COUNT - 1
        ));
    }
    Ok(ImageUser {
        ids: ExecUser { uid, gid },
        home,
    })
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// `name:password:uid:gid:gecos:home:shell` lines (malformed ones skipped).
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5],
        })
    })
}

/// `name:password:gid:members` lines (malformed ones skipped).
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32)> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 3 || line.starts_with('#') {
            return None;
        }
        Some((fields[0], fields[2].parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        broken:x:nope:1:::\n\
        svc:x:999:998::relative:/bin/false\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app\napp:x:1000:\n";

    fn ids(spec: &str) -> (u32, u32) {
        let user = resolve(spec, PASSWD, GROUP).unwrap();
        (user.ids.uid, user.ids.gid)
    }

    #[test]
    fn names_and_ids_resolve_as_docker_does() {
        assert_eq!(ids("app"), (1000, 1000));
        assert_eq!(ids(" app "), (1000, 1000));
        assert_eq!(ids("1000"), (1000, 1000), "a known uid takes its gid");
        assert_eq!(ids("4242"), (4242, 0), "an unknown uid gets gid 0");
        assert_eq!(ids("app:staff"), (1000, 50));
        assert_eq!(ids("app:7"), (1000, 7));
        assert_eq!(ids("4242:4242"), (4242, 4242));
        assert_eq!(ids("root"), (0, 0));
        let app = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!(app.home.as_deref(), Some("/home/app"));
        assert_eq!(resolve("svc", PASSWD, GROUP).unwrap().home, None);
        assert_eq!(resolve("4242", PASSWD, GROUP).unwrap().home, None);
    }

    #[test]
    fn unknown_names_and_unmapped_ids_are_refused() {
        for (spec, says) in [
            ("nobody", "not in the image's /etc/passwd"),
            ("broken", "not in the image's /etc/passwd"),
            ("app:wheel", "not in the image's /etc/group"),
            ("70000", "a sandbox maps ids 0 to 65535"),
            ("app:70000", "a sandbox maps ids 0 to 65535"),
            (":staff", "names no user"),
        ] {
            let err = resolve(spec, PASSWD, GROUP).unwrap_err();
            assert!(err.contains(says), "{spec}: {err}");
        }
        assert_eq!(
            ids("1000:"),
            (1000, 1000),
            "an empty group keeps the user's"
        );
        assert!(resolve("app", "", "").is_err(), "no /etc/passwd");
    }
}
