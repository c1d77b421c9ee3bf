# Retraining: `docker build -f docker/training.Dockerfile -t intent-training .` then
#   docker run --rm -v "$PWD/models:/app/models" intent-training all --out models/my-model
# torch is the CPU build pinned in pyproject.toml's `train` extra.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 intent
WORKDIR /app
COPY pyproject.toml README.md ./
COPY intent ./intent
COPY training ./training
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu '.[train]'
USER intent
ENTRYPOINT ["python", "-m", "training"]
CMD ["all", "--out", "models/intent-gru"]
