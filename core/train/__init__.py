"""Trainers: forgers on CelebA (``veil train forger``)."""
