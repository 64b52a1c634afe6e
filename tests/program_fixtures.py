"""What the program tests share besides conftest's fixtures: the tiny network, as flags and as a spec."""
import os

from p3d_keras.jobs.models import ModelSpec

MODEL_ARGS = ["--depth", "1,1,1,1", "--width", "4", "--frames", "16", "--size", "32"]
SPEC = ModelSpec(depth=(1, 1, 1, 1), width=4, frames=16, size=32)  # what MODEL_ARGS say
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
