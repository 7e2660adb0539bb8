#!/usr/bin/env bash
# The image, really built and run, without a Docker engine or a GPU (docs/cluster.md, "Building the image here").
#
#   sudo bash scripts/image_smoke.sh          # root; about half an hour on 2 cores; NOT part of the tests
#
# 1. a local base: Debian bookworm (minbase) made by mmdebstrap, with this machine's apt and pip configuration and
#    CA certificates copied in (copied, never printed), imported by `podman import`;
# 2. both stages of the Dockerfile built on it by podman (BUILD_BASE / RUNTIME_BASE build arguments, DS_CUDA_OPS=0:
#    no nvcc here), torch from the machine's local wheel folder (the CPU 2.13.0 wheel), mounted read-only;
# 3. inside the image, as its non-root user: the data tools on the embedded corpus (tokenizer, English-Clone,
#    shards, verify), then the image's ENTRYPOINT (deepspeed launchers/pretrain.py) on configs/tiny.yaml;
# 4. prints the image size and the build time.
#
# What these machines need (found the hard way): --isolation chroot; --format docker (the OCI format silently drops
# SHELL, and with it pipefail); the overlay storage driver (vfs copies the rootfs per layer: 25+ min, 70 GB);
# runc on cgroupfs; explicit nofile / nproc ulimits no higher than 20000 / 32768.
# Needs (Debian): podman mmdebstrap uidmap fuse-overlayfs runc.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${SMOKE_WORK:-/var/tmp/prealign-image-smoke}   # base rootfs, the runs folder the container writes
BASE=${SMOKE_BASE:-localhost/prealign-base:bookworm}
IMAGE=${SMOKE_IMAGE:-localhost/prealign-scale:smoke}
WHEELS=${SMOKE_WHEELS:-/opt/wheels}                 # pip's find-links on these machines: the CPU torch wheel
PODMAN=(podman --storage-driver overlay --runtime runc --cgroup-manager cgroupfs)
ULIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=32768:32768)

[ "$(id -u)" = 0 ] || { echo "image_smoke.sh: run as root (mmdebstrap into a folder, rootful podman)" >&2; exit 2; }
for tool in podman mmdebstrap runc; do
  command -v "$tool" >/dev/null || { echo "image_smoke.sh: $tool missing: apt-get install podman mmdebstrap uidmap fuse-overlayfs runc" >&2; exit 2; }
done
ls "$WHEELS"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 \
  || { echo "image_smoke.sh: no CPU torch 2.13.0 wheel in $WHEELS (SMOKE_WHEELS=...)" >&2; exit 2; }
mkdir -p "$WORK"
t_start=$(date +%s)

# ---- 1. the local base -----------------------------------------------------------------------------------------
if "${PODMAN[@]}" image exists "$BASE"; then
  echo "== 1/4 base $BASE exists (podman rmi it to rebuild)"
else
  echo "== 1/4 base: mmdebstrap bookworm minbase -> podman import $BASE"
  rm -rf "$WORK/rootfs"
  # passwd: useradd (the CUDA bases have it; minbase has not); ca-certificates: TLS to the package indexes
  mmdebstrap --variant=minbase --include=ca-certificates,passwd bookworm "$WORK/rootfs" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  R=$WORK/rootfs
  # the machine's apt configuration (sources, options, credentials) and pip configuration: copied, not read out
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    rm -f "$R/etc/apt/sources.list"; cp /etc/apt/sources.list.d/*.sources "$R/etc/apt/sources.list.d/"
  fi
  [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$R/etc/apt/sources.list"
  for f in /etc/apt/apt.conf.d/99* /etc/apt/auth.conf.d/*; do
    [ -f "$f" ] && install -D -m 0600 "$f" "$R$f"
  done
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$R/etc/pip.conf"
  # the invoking user's pip configuration (here: find-links to the wheel folder, the local indexes) -> root's
  for f in "${XDG_CONFIG_HOME:-$HOME/.config}/pip/pip.conf" "$HOME/.pip/pip.conf"; do
    [ -f "$f" ] && install -D -m 0600 "$f" "$R/root/.config/pip/pip.conf"
  done
  [ -d /etc/xdg/pip ] && mkdir -p "$R/etc/xdg" && cp -r /etc/xdg/pip "$R/etc/xdg/"
  # CA certificates: the local ones (kept by any later update-ca-certificates) and the whole bundle
  cp /usr/local/share/ca-certificates/*.crt "$R/usr/local/share/ca-certificates/" 2>/dev/null || true
  cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"
  tar -C "$R" -c . | "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$R"
fi
t_base=$(date +%s)

# ---- 2. both stages ----------------------------------------------------------------------------------------------
echo "== 2/4 podman build (build + runtime stages) on $BASE"
VOLUMES=(--volume "$WHEELS:$WHEELS:ro")
for d in /opt/pypi /opt/pypi-more; do   # the file:// indexes the machine's pip.conf may name
  [ -d "$d" ] && VOLUMES+=(--volume "$d:$d:ro")
done
"${PODMAN[@]}" build --isolation chroot --format docker --network host --pull=never "${ULIMITS[@]}" \
  "${VOLUMES[@]}" \
  --build-arg BUILD_BASE="$BASE" --build-arg RUNTIME_BASE="$BASE" \
  --build-arg DS_CUDA_OPS=0 --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
  -t "$IMAGE" .
t_built=$(date +%s)

# ---- 3. run it, as its non-root user ------------------------------------------------------------------------------
RUNS=$WORK/runs
rm -rf "$RUNS"; mkdir -p "$RUNS"
uid=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")
[ -n "$uid" ] && [ "$uid" != 0 ] && [ "$uid" != root ] || { echo "image_smoke.sh: image user is '$uid'" >&2; exit 1; }
chown "$uid" "$RUNS"
RUN=("${PODMAN[@]}" run --rm --network none --shm-size 2g "${ULIMITS[@]}" \
     -e DS_ACCELERATOR=cpu -e OMP_NUM_THREADS=1 -e MASTER_ADDR=127.0.0.1 -e GLOO_SOCKET_IFNAME=lo \
     -e PYTHONWARNINGS=ignore::UserWarning,ignore::FutureWarning,ignore::DeprecationWarning \
     -v "$RUNS:/opt/prealign-scale/runs")
echo "== 3/4 data tools inside the image (user $uid)"
"${RUN[@]}" --entrypoint bash "$IMAGE" -c '
  set -euo pipefail
  [ "$(id -u)" != 0 ] || { echo "running as root" >&2; exit 1; }
  O=runs/demo
  python data_tools/train_tokenizer.py --corpus data/embedded/kjv_train.jsonl.gz --vocab-size 4096 --out $O/tok
  python data_tools/make_english_clone.py --tokenizer $O/tok --out $O/clone --clone-fraction 0.1 --top-n 1500 \
    --heldout-fraction 0.1
  python data_tools/build_shards.py --out $O/shards --tokenizer $O/tok --table $O/clone/table \
    --corpus en=$O/clone/en.jsonl.gz --corpus clone=$O/clone/clone.jsonl.gz --clone-langs clone \
    --mixture en=0.9,clone=0.1 --p 0.05 --seq-len 256 --samples-per-shard 400 --shard-multiple 4 --workers 2 \
    --no-progress
  python data_tools/verify_shards.py $O/shards'
echo "== 4/4 the image's ENTRYPOINT (deepspeed launchers/pretrain.py) on configs/tiny.yaml"
"${RUN[@]}" "$IMAGE" --config configs/tiny.yaml run.out_dir=runs/smoke_train
ls "$RUNS/smoke_train"
t_end=$(date +%s)

size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
echo
echo "image_smoke: $IMAGE size $((size / 1000000)) MB ($size bytes)"
echo "image_smoke: base $((t_base - t_start)) s, build (both stages) $((t_built - t_base)) s, runs $((t_end - t_built)) s"
