"""`finetune serve`: an OpenAI-compatible HTTP API on a trained model.

- `loading`: what to serve (a merged model, a base plus adapters, a config's outputs);
- `engine`: continuous batching at the token step over one shared KV cache;
- `kvbatch`: the tensor bookkeeping of that batch (join, drop, trim rows);
- `sampling`: choosing a token (greedy, temperature, top-p, seed) and its logprobs;
- `text`: incremental detokenization and stop sequences;
- `schemas`: request validation and the OpenAI error shape;
- `app`: the FastAPI routes; `metrics`: Prometheus.
"""
