"""Base models for training: offline loading of SD checkpoints and diffusers folders, with shipped configs."""
