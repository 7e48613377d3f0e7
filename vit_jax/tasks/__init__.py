"""What differs between objectives (classification, image-text): losses and task objects."""
