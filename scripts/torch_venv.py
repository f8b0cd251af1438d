"""The pinned PyTorch venv (.cache/venv-torch, about 3 GB) shared by the side-by-side benchmark scripts."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".cache" / "venv-torch"
PINS = ["torch==2.15.0", "transformers==5.25.0", "peft==0.21.2", "accelerate==1.16.0", "safetensors==0.8.0", "numpy", "gguf==0.19.0"]


def ensure_venv():
    """Re-executes the calling script inside the pinned venv, creating it (or completing a venv made before a pin
    was added) first when needed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV} (pinned: {' '.join(PINS)}; about 3 GB)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], check=True)
    elif subprocess.run([str(python), "-c", "import gguf"], capture_output=True).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PINS], check=True)
    os.execv(str(python), [str(python), *sys.argv])
