"""p3d_keras: Pseudo-3D Residual Networks (Qiu, Yao, Mei, ICCV 2017) for Keras 3."""
from p3d_keras.version import __version__

__all__ = ["__version__"]
