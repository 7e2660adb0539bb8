# syntax=docker/dockerfile:1
# prealign-scale for GPU clusters: CUDA torch + the project's pins, DeepSpeed CUDA ops pre-built, Open MPI +
# PMIx. Build, push and run it (docker, enroot/pyxis under SLURM): docs/cluster.md.
#
#   docker build -t prealign-scale:0.1.0 .
#   docker run --gpus all --ipc=host -v $PWD/runs:/opt/prealign-scale/runs prealign-scale:0.1.0 \
#       --config configs/tiny.yaml                # = deepspeed launchers/pretrain.py --config configs/tiny.yaml
#
# Pins: torch and deepspeed are pinned here (ARG *_VERSION) to the same versions as pyproject.toml, everything
# else comes from pyproject.toml itself (`pip install .`); tests/test_docker.py checks that they agree.
# Transformer Engine: the model uses megatron-core's local layer spec, so TE is not needed and the CUDA base
# image does not ship it; TE_VERSION=<x.y> builds it from source in the build stage (slow), or build FROM the
# NVIDIA PyTorch image (nvcr.io/nvidia/pytorch), which ships TE with NVIDIA's own torch build.

ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04
# The two bases, as build arguments so that another base can be substituted: scripts/image_smoke.sh builds both
# stages on a local Debian base (no GPU, no registry) with DS_CUDA_OPS=0 and the CPU torch wheel.
ARG BUILD_BASE=nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION}
ARG RUNTIME_BASE=nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION}

# ---------------------------------------------------------------------------------------------------------
# build: compilers + CUDA toolkit; a venv with CUDA torch, DeepSpeed with pre-built ops, mpi4py against Open MPI
FROM ${BUILD_BASE} AS build

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG DEEPSPEED_VERSION=0.19.8
ARG TE_VERSION=""
# 1: DeepSpeed's CUDA ops compiled at build time and checked (needs nvcc: the CUDA devel base); 0: none pre-built
ARG DS_CUDA_OPS=1
# GPU architectures the pre-built DeepSpeed ops are compiled for: A100 (8.0), A10/L40 (8.6, 8.9), H100/H200 (9.0)
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}

# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-dev python3-venv build-essential ninja-build git \
      openmpi-bin libopenmpi-dev \
 && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}

# 1. CUDA torch first (from the CUDA index), so no later step can replace it with another build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
 && pip install setuptools==84.2.1 wheel==0.48.0 packaging==26.4 ninja==1.13.2

# 2. DeepSpeed with its CUDA ops compiled now (no JIT build at the first training step, no nvcc at run time).
RUN if [ "${DS_CUDA_OPS}" = 1 ]; then \
      export DS_BUILD_FUSED_ADAM=1 DS_BUILD_FUSED_LAMB=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1; \
    fi \
 && pip install --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}" \
 && if [ "${DS_CUDA_OPS}" = 1 ]; then \
      python -c "from deepspeed.git_version_info import installed_ops as ops; assert ops['fused_adam'], ops"; \
    fi

# 3. Optional Transformer Engine (built from source against this torch).
RUN if [ -n "${TE_VERSION}" ]; then \
      NVTE_FRAMEWORK=pytorch pip install --no-build-isolation "transformer_engine[pytorch]==${TE_VERSION}"; \
    fi

# 4. The project with the pins of pyproject.toml; mpi4py compiled against this image's Open MPI (PMIx-enabled).
COPY pyproject.toml /src/
COPY prealign_scale /src/prealign_scale
# liger-kernel (the LM head's fused cross-entropy on CUDA) without its requirements, which would replace torch.
RUN PIP_NO_BINARY=mpi4py pip install /src \
 && pip install --no-deps liger-kernel==0.8.5 \
 && python -c "import torch, deepspeed, megatron.core, mpi4py, liger_kernel, prealign_scale; print(torch.__version__, torch.version.cuda)"

# ---------------------------------------------------------------------------------------------------------
# runtime: CUDA runtime libraries, Open MPI + PMIx, the venv, the code; a non-root user
FROM ${RUNTIME_BASE} AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive

# gcc + python3-dev: Triton compiles its small launcher stubs at run time. numactl: deepspeed --bind_cores_to_rank.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-dev gcc libc6-dev openmpi-bin numactl libnuma1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

ARG USER_UID=1000
RUN (userdel -r ubuntu 2>/dev/null || true) \
 && useradd --create-home --uid "${USER_UID}" --shell /bin/bash prealign

COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/prealign-scale
COPY --chown=prealign:prealign prealign_scale ./prealign_scale
COPY --chown=prealign:prealign launchers ./launchers
COPY --chown=prealign:prealign data_tools ./data_tools
COPY --chown=prealign:prealign configs ./configs
COPY --chown=prealign:prealign ds_configs ./ds_configs
COPY --chown=prealign:prealign scripts ./scripts
COPY --chown=prealign:prealign data/embedded ./data/embedded
COPY --chown=prealign:prealign data/eval ./data/eval
COPY --chown=prealign:prealign pyproject.toml README.md ./
RUN install -d -o prealign -g prealign /opt/prealign-scale/runs

# Caches in /tmp: writable for any user (enroot/pyxis run the image as the calling user, not as prealign).
# (DL3064 flags TOKENIZERS_PARALLELISM for its name only: no secret here.)
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false \
    TORCH_EXTENSIONS_DIR=/tmp/torch_extensions \
    TRITON_CACHE_DIR=/tmp/triton

USER ${USER_UID}
ENTRYPOINT ["deepspeed", "launchers/pretrain.py"]
CMD ["--help"]
