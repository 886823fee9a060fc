"""Machinery shared by the RAD-DINO entry points: data, augmentation, masking, losses, schedules, heads."""
