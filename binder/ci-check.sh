#!/usr/bin/env bash
# Rehearse a Binder build and launch without Docker, as mybinder.org would run them:
#
#   1. a clean Python environment with binder/environment.yml's packages (pip stands in
#      for conda: Java comes from the system here; conda-only entries are skipped);
#   2. a copy of the repository as the home folder of a user who is not root (`nobody`
#      when this runs as root, as CI does), like /home/jovyan on Binder;
#   3. binder/postBuild, then binder/start with a command that runs notebooks with
#      papermill from notebooks/, as a learner's kernel would, through the broker that
#      binder/start started in the background;
#   4. checks that the notebooks used the dataset postBuild made, then stops the broker
#      and removes everything.
#
# Usage: binder/ci-check.sh [NOTEBOOK ...]
#   Default notebooks: 00_setup, 01_dataset and the first notebooks/*kafka*.ipynb.
#   BINDER_CHECK_PAPERMILL_ARGS goes to papermill, e.g. "-p duration_s 20".
#   Every step has a time limit: BINDER_CHECK_STEP_S, default 900 s.
#   The broker uses ports 59092/59093 unless BANKCOURSE_KAFKA_PORT and
#   BANKCOURSE_KAFKA_CONTROLLER_PORT say otherwise, so it never meets `make test`'s.
#   BINDER_CHECK_COLD=1 starts with empty jar caches, as a first build on Binder does;
#   by default this machine's cached Kafka and connector jars are copied in.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
step_s="${BINDER_CHECK_STEP_S:-900}"
port="${BANKCOURSE_KAFKA_PORT:-59092}"
controller_port="${BANKCOURSE_KAFKA_CONTROLLER_PORT:-59093}"
began=$(date +%s)

say() { printf '== binder-check [%4ss]: %s\n' "$(( $(date +%s) - began ))" "$*"; }

work="$(mktemp -d "${TMPDIR:-/tmp}/bankcourse-binder.XXXXXX")"
chmod 755 "$work"
home="$work/home"
env_dir="$work/env"

as_user=()
user_name="$(id -un)"
if [ "$(id -u)" = "0" ] && command -v runuser >/dev/null 2>&1 && id nobody >/dev/null 2>&1; then
    as_user=(runuser -u nobody --)
    user_name=nobody
fi

# The interpreter for the clean environment: one the Binder user can run (a pyenv under
# /root is not), Python 3.10 or newer with venv.
python=""
for candidate in ${PYTHON:-} /usr/bin/python3 /usr/local/bin/python3 python3; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "${as_user[@]}" "$candidate" -c \
        'import sys, venv, ensurepip; assert sys.version_info >= (3, 10)' 2>/dev/null; then
        python="$(command -v "$candidate")"
        break
    fi
done
[ -n "$python" ] || { echo "binder-check: no Python 3.10+ with venv that $user_name can run; \
set PYTHON" >&2; exit 1; }

# Run a command as the Binder user, in its home, with only the environment Binder gives,
# for at most $step_s seconds.
in_binder() {
    timeout "$step_s" "${as_user[@]}" env -i \
        HOME="$home" USER="$user_name" REPO_DIR="$home" \
        PATH="$env_dir/bin:/usr/local/bin:/usr/bin:/bin" \
        LANG=C.UTF-8 CI="${CI:-true}" \
        BINDER_CHECK_PAPERMILL_ARGS="${BINDER_CHECK_PAPERMILL_ARGS:-}" \
        BANKCOURSE_KAFKA_PORT="$port" BANKCOURSE_KAFKA_CONTROLLER_PORT="$controller_port" \
        bash -c 'cd "$HOME" && exec "$@"' binder "$@"
}

cleanup() {
    status=$?
    if [ -x "$env_dir/bin/python" ] && [ -d "$home" ]; then
        say "stop the broker"
        step_s=60 in_binder python -m bankcourse broker stop || true
    fi
    rm -rf "$work"
    if [ "$status" = 0 ]; then
        say "passed"
    else
        say "FAILED (exit $status)"
    fi
    exit "$status"
}
trap cleanup EXIT

say "copy the repository to $home (as Binder does)"
mkdir -p "$home"
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$home"
else
    (cd "$repo" && tar --exclude=./.venv --exclude=./output --exclude='./data/*.*' -cf - .) \
        | tar -xf - -C "$home"
fi

say "create a clean environment from binder/environment.yml"
timeout "$step_s" "$python" -m venv "$env_dir"
requirements="$work/requirements.txt"
"$python" - "$home/binder/environment.yml" >"$requirements" <<'PY'
import re
import sys

# The environment file's dependencies as pip requirements: conda's `name=X` is `name==X.*`,
# conda-forge's matplotlib-base is PyPI's matplotlib; python, pip and openjdk are conda's.
rename = {"matplotlib-base": "matplotlib"}
skip = {"python", "pip", "openjdk"}
in_deps = False
for raw in open(sys.argv[1]):
    line = raw.split("#", 1)[0].rstrip()
    if not line.strip():
        continue
    if not line.startswith(" "):
        in_deps = line.startswith("dependencies:")
        continue
    entry = re.fullmatch(r"\s*-\s*(.+)", line)
    if not in_deps or not entry or entry.group(1).strip() == "pip:":
        continue
    spec = entry.group(1).strip()
    name, rest = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", spec).groups()
    if name in skip:
        continue
    if re.fullmatch(r"=[^=<>!]+", rest):
        rest = "==" + rest[1:] + ("" if rest.endswith("*") else ".*")
    print(rename.get(name, name) + rest)
PY
timeout "$step_s" "$env_dir/bin/python" -m pip install --quiet --upgrade pip
timeout "$step_s" "$env_dir/bin/python" -m pip install --quiet --no-compile -r "$requirements"

if [ "${BINDER_CHECK_COLD:-0}" != "1" ] && [ -d "${XDG_CACHE_HOME:-$HOME/.cache}/bankcourse" ]
then
    say "seed the jar caches from this machine's (BINDER_CHECK_COLD=1 to skip)"
    src="${XDG_CACHE_HOME:-$HOME/.cache}/bankcourse"
    mkdir -p "$home/.cache/bankcourse/kafka"
    for d in "$src"/kafka/[0-9]*; do
        [ -d "$d/libs" ] && cp -r "$d" "$home/.cache/bankcourse/kafka/"
    done
    [ -d "$src/ivy" ] && cp -r "$src/ivy" "$home/.cache/bankcourse/"
fi
[ ${#as_user[@]} -gt 0 ] && chown -R nobody "$work"

say "binder/postBuild as $user_name"
in_binder ./binder/postBuild

say "check that Jupyter reads the settings postBuild wrote"
cat >"$work/check-jupyter.py" <<'PY'
import json
from pathlib import Path

from jupyter_server.serverapp import ServerApp
from jupyterlab.commands import get_app_dir

app = ServerApp()
app.load_config_file()
cull_s = app.config.MappingKernelManager.cull_idle_timeout
assert cull_s == 600, f"the server does not cull idle kernels: {cull_s!r}"
overrides = Path(get_app_dir()) / "settings" / "overrides.json"
tracker = json.loads(overrides.read_text())["@jupyterlab/notebook-extension:tracker"]
assert tracker["kernelShutdown"] is True, tracker
print(f"kernels culled after {cull_s} s without a tab; closing a notebook shuts its kernel")
PY
chmod 644 "$work/check-jupyter.py"
in_binder python "$work/check-jupyter.py"

notebooks=("$@")
if [ ${#notebooks[@]} -eq 0 ]; then
    notebooks=(notebooks/00_setup.ipynb notebooks/01_dataset.ipynb)
    kafka_nb=$(cd "$home" && ls notebooks/*kafka*.ipynb 2>/dev/null | head -n 1 || true)
    [ -n "$kafka_nb" ] && notebooks+=("$kafka_nb")
fi
for nb in "${notebooks[@]}"; do
    [ -f "$home/$nb" ] || { echo "binder-check: no notebook $nb" >&2; exit 1; }
done

say "binder/start, then run ${notebooks[*]} from notebooks/ through its broker"
dataset=$(cd "$home" && ls -l --time-style=+%s data/paysim-200000-seed42-v1.csv.gz)
cat >"$work/run-notebooks.sh" <<'SH'
set -e
for nb in "$@"; do
    echo "-- papermill $nb"
    python -m papermill --cwd notebooks --no-progress-bar $BINDER_CHECK_PAPERMILL_ARGS \
        "$nb" "out-$(basename "$nb")"
done
python -m bankcourse broker status
SH
chmod 644 "$work/run-notebooks.sh"
in_binder ./binder/start bash "$work/run-notebooks.sh" "${notebooks[@]}"

say "check the notebooks used the dataset postBuild made"
strays=$(cd "$home" && find . -name 'paysim-*' -not -path './data/*' -not -path './.cache/*')
if [ -n "$strays" ]; then
    echo "binder-check: the notebooks wrote datasets outside data/: $strays" >&2
    exit 1
fi
[ "$(cd "$home" && ls -l --time-style=+%s data/paysim-200000-seed42-v1.csv.gz)" = "$dataset" ] || {
    echo "binder-check: data/paysim-200000-seed42-v1.csv.gz was rewritten by the notebooks" >&2
    exit 1; }
