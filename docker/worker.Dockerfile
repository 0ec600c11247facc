# The GPU worker image: `lambdahat worker` with a CUDA build of torch.
#
# The CUDA runtime comes inside the torch wheels (nvidia-* pip packages); the host needs only the NVIDIA
# driver and the NVIDIA Container Toolkit. Pick the index that matches the host driver
# (cu126, cu128, ...: https://pytorch.org/get-started/locally/):
#
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#       -t lambdahat-worker .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/lambdahat
COPY pyproject.toml README.md ./
COPY api ./api
COPY backend ./backend
COPY worker ./worker
COPY estimator ./estimator
COPY lambdahat ./lambdahat
COPY client ./client
COPY ops ./ops
COPY migrations ./migrations
RUN pip install ".[server,s3]" && rm -rf build *.egg-info

RUN useradd --create-home --uid 10001 lambdahat \
 && mkdir -p /var/lib/lambdahat/artifacts \
 && chown -R lambdahat:lambdahat /var/lib/lambdahat
USER lambdahat

ENV LAMBDAHAT_DATA_DIR=/var/lib/lambdahat \
    LAMBDAHAT_LOG_FORMAT=json \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# One job at a time (prefork, one process, prefetch 1, late acks); compose gives each GPU its own service.
CMD ["lambdahat", "worker", "--device", "cuda"]
