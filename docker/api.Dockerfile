# The API image: `lambdahat serve`, `lambdahat db upgrade`, `lambdahat keys ...` and the optional CPU worker.
#
# No CUDA: the API process never imports torch. It does need a CPU build of torch, because uploaded
# `.pt` checkpoints are inspected with torch.load(weights_only=True) in a short-lived subprocess
# (`python -m worker.inspect_checkpoint`), and the optional CPU worker (compose profile "cpu") runs jobs with it.
# The CPU wheel is ~200 MB against several GB for a CUDA build.
#
#   docker build -f docker/api.Dockerfile -t lambdahat-api .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the CPU index: the project's own requirement would otherwise pull a CUDA build.
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
# s3: fsspec's S3 backend, for LAMBDAHAT_ARTIFACT_DIR=s3://bucket/prefix (docs/deploy.md).
RUN pip install ".[server,s3]" && rm -rf build *.egg-info

# An unprivileged user; the data dir and the artifact mount point belong to it, so a fresh named volume
# mounted there is writable (the worker image uses the same uid for the shared artifact volume).
RUN useradd --create-home --uid 10001 lambdahat \
 && mkdir -p /var/lib/lambdahat/artifacts \
 && chown -R lambdahat:lambdahat /var/lib/lambdahat
USER lambdahat

ENV LAMBDAHAT_DATA_DIR=/var/lib/lambdahat \
    LAMBDAHAT_LOG_FORMAT=json

EXPOSE 8000
CMD ["lambdahat", "serve", "--host", "0.0.0.0", "--port", "8000"]
