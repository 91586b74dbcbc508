# Shell functions of deploy/up and deploy/test (sourced, not run).

# Fails unless Docker answers and docker-compose is installed (installed with apt as root).
need_docker() {
  if ! docker info >/dev/null 2>&1; then
    echo "deploy: Docker is not running (start dockerd, or: apt-get install docker.io)" >&2
    return 1
  fi
  if ! command -v docker-compose >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose
    else
      echo "deploy: docker-compose is missing (apt-get install docker-compose)" >&2
      return 1
    fi
  fi
}

# Writes a new random JWT secret to FILE unless it exists, readable by root and the broker
# image's user (uid/gid 10001) only.
make_secret() {
  local file=$1
  [ -s "$file" ] && return 0
  mkdir -p "$(dirname "$file")"
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$file")
  chown 0:10001 "$file" 2>/dev/null || true
  chmod 0640 "$file"
}

# Waits until every container of compose project PROJECT reports healthy (at most SECONDS,
# default 120); on a timeout prints their states and last log lines and fails.
wait_healthy() {
  local project=$1 seconds=${2:-120} ids states
  ids=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
  [ -n "$ids" ] || { echo "deploy: no containers in project $project" >&2; return 1; }
  for _ in $(seq "$((seconds * 2))"); do
    # shellcheck disable=SC2086
    states=$(docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' $ids)
    if ! grep -qv ' healthy$' <<<"$states"; then
      return 0
    fi
    sleep 0.5
  done
  echo "deploy: not healthy within ${seconds}s:" >&2
  echo "$states" >&2
  for id in $ids; do
    echo "--- $(docker inspect -f '{{.Name}}' "$id")" >&2
    docker logs --tail 20 "$id" 2>&1 | cut -c1-400 >&2
  done
  return 1
}
