"""The trust loop: validation against published runs, calibration from measured runs, regression goldens."""
