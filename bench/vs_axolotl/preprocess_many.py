"""Runs inside the axolotl venv: `python preprocess_many.py CONFIG...`.

For each config: axolotl's own preprocess CLI entry point (`axolotl.cli.preprocess.do_cli`,
what `python -m axolotl.cli.preprocess CONFIG` calls), run with the config's directory
as working directory, then its prepared dataset written next to the config as
`axolotl-rows.jsonl` (see dump_prepared.py). All configs share one process so axolotl's
import cost (~30 s of CPU) is paid once, not once per case. A config that fails gets an
`axolotl-error.txt` instead; the others still run.
"""

import os
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(configs: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    from axolotl.cli.preprocess import do_cli
    from dump_prepared import main as dump

    failed = 0
    for config in map(Path, configs):
        os.chdir(config.parent)
        sys.argv = ["axolotl.cli.preprocess", str(config)]
        try:
            do_cli(config=str(config))
            code = dump(str(config.parent / "prepared"), str(config.parent / "axolotl-rows.jsonl"))
            if code:
                raise RuntimeError(f"dump_prepared exited {code}")
        except BaseException:  # noqa: BLE001 - SystemExit from the CLI too: record, go on
            failed += 1
            (config.parent / "axolotl-error.txt").write_text(traceback.format_exc())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
