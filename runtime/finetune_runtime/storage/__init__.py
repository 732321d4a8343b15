"""Bytes in and out of the pod: object storage and the local output directory.

- `s3` (URIs, options, clients), `s3_errors` (what failed, in words), `redact` (no secret
  in any message or log line);
- `fetch` (S3 → local, cached by ETag, atomic) over `fetch_cache` and `transfer`;
  `upload` (local → S3, unchanged objects skipped); `publish` (a finished run's weights
  to `<uri>/adapter|model|merged/`, the layout in `finetune_runtime.contract`);
- `integrity` (SHA-256 manifests), `outdir` and `output_lock` (a safe, single-writer
  output_dir).

Storage never imports the model or the trainer: `publish` is handed the merge step.
"""
