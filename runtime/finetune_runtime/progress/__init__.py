"""Training progress: what rank 0 knows and who sees it.

- `document`: the ProgressDocument the operator polls (pydantic only: the operator imports it);
- `reporting`: the thread-safe bookkeeping behind it, with rates, ETA and Prometheus metrics;
- `server`: rank 0's `/progress`, `/metrics`, `/healthz` endpoint;
- `console`: the terminal's step lines; `tracking`: W&B / MLflow / TensorBoard.

Kept import-light on purpose: importing `progress.document` loads only this docstring.
"""
