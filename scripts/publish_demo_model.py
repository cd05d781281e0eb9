"""Publish a trained, evaluated model file as the bundled demo model (``sample_data/medimp-demo``).

    python scripts/publish_demo_model.py runs/demo/best.safetensors [sample_data/medimp-demo]

The weights, heads and card are written again under the new name (card ``name`` included), through the
same checked writer as every model file, so its hashes match; nothing else of the card changes.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from napari_medimp.core.checkpoint import load_model, save_model

    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(argv[0])
    target = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "sample_data" / "medimp-demo"
    loaded = load_model(source)
    card = loaded.card
    path = save_model(target, loaded.model, preprocessing=card["preprocessing"],
                      prompt_template_version=card["prompt_template_version"], training=card.get("training"),
                      metrics=card.get("metrics"), prognosis=loaded.prognosis, licence=card.get("licence"),
                      name=target.name)
    print(f"{source} published as {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
