"""Side by side with axolotl itself: token-exact data, training equivalence, speed, config coverage.

axolotl lives in its own venv (`make axolotl`, .cache/axolotl-venv) and is only ever
driven through its CLI in a subprocess; nothing here imports it. Modules:
`venv` (find and run it), `cases` (the config matrix), `ours` (our side of a case),
`compare` (pure diffing), `dump_prepared` (runs *inside* the axolotl venv), `training`
(loss curves), `speed` (the bench), `coverage` (its shipped configs through `finetune validate`).
"""
