"""``python -m rgflow.data {msds1,msds2,celeba} [--seed S] [--root DIR] [--verify] …``

Builds the data set's cache if it is missing, checks it if it exists, rebuilds it if it is corrupt
or was built for something else, and prints one line per action (what, where, size, time, why).
``--verify`` only checks: exit status 1 and the reason if the cache is missing or invalid.
While it builds, a progress bar on stderr counts the rendered/decoded chunks (on a terminal only).
Exit status 2 for bad input (unknown option value, missing CelebA folder).
"""
from __future__ import annotations

import argparse
import sys

from rgflow.config import DATASETS, INTERPOLATIONS, ConfigError, DataConfig
from rgflow.data import cache
from rgflow.data.celeba import CelebAMissing
from rgflow.data.splits import cache_path, ensure_celeba, ensure_msds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rgflow.data", description=__doc__.splitlines()[2])
    parser.add_argument("name", choices=DATASETS)
    parser.add_argument("--seed", type=int, default=0, help="MSDS generation seed (default 0)")
    parser.add_argument("--root", default="data", help="cache folder (default ./data)")
    parser.add_argument("--verify", action="store_true", help="only check the cache, never build")
    parser.add_argument("--celeba-dir", help="CelebA folder (default $RGFLOW_CELEBA_DIR or <root>/celeba)")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default="bicubic")
    parser.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    args = parser.parse_args(argv)
    try:
        cfg = DataConfig(name=args.name, root=args.root, seed=args.seed, celeba_dir=args.celeba_dir,
                         interpolation=args.interpolation)
        if cfg.name == "celeba":
            _, _, report = ensure_celeba(cfg, build=not args.verify, workers=args.workers)
        else:
            _, _, report = ensure_msds(cfg.root, cfg.name, cfg.seed, build=not args.verify, workers=args.workers)
    except (ConfigError, CelebAMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except cache.CacheInvalid as err:
        print(f"invalid {cache_path(cfg)}: {err}", file=sys.stderr)
        return 1
    print(report.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
