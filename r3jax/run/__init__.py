"""A run assembled: its data source (the world or COCO/VQAv2), the state it
starts from, its evaluation, the training loop and R3-RL's run."""
