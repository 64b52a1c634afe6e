"""The P3D ResNet family in the style of keras.applications (installed as p3d_keras.applications)."""
