"""A small COCO 2014 + VQAv2 manual directory in the official formats, made by
the tests: a coloured shape on each image, captions and questions about it."""

import json
import os

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220),
           "yellow": (230, 220, 30)}


def _answers(answer: str, other: str, n_other: int) -> list[dict]:
  out = [answer] * (10 - n_other) + [other] * n_other
  return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
          for i, a in enumerate(out)]


def write(root: str, n_train: int = 12, n_val: int = 6, size: int = 48) -> dict:
  """Writes the directory; returns {split: [(image id, colour, big)]}."""
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
  names = list(COLOURS)
  made = {}
  for split, folder, n, first in (("train", "train2014", n_train, 1),
                                  ("validation", "val2014", n_val, 500)):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    images, anns, questions, answers = [], [], [], []
    made[split] = []
    for k in range(n):
      image_id = first + 3 * k
      colour, big = names[k % len(names)], bool(k // len(names) % 2)
      pixels = np.zeros((size, size + 8, 3), np.uint8)
      half = size // 3 if big else size // 6
      c = size // 2 + int(rng.integers(-3, 4))
      pixels[c - half:c + half, 4 + c - half:4 + c + half] = COLOURS[colour]
      file_name = f"COCO_{folder}_{image_id:012d}.jpg"
      Image.fromarray(pixels).save(os.path.join(root, folder, file_name),
                                   quality=95)
      images.append({"id": image_id, "file_name": file_name,
                     "height": size, "width": size + 8})
      word = "large" if big else "small"
      caps = [f"A {word} {colour} square.", f"a {colour} square on black",
              f"There is one {word} {colour} box in the picture.",
              f"{colour.capitalize()} square in the middle.",
              f"a picture of a {colour} square"]
      for j, cap in enumerate(caps):
        anns.append({"id": image_id * 10 + j, "image_id": image_id,
                     "caption": cap})
      for j, (q, a, other, n_other, atype) in enumerate((
          ("What color is the square?", colour, "orange", 1, "other"),
          ("Is the square large?", "yes" if big else "no",
           "no" if big else "yes", 2, "yes/no"),
          ("How many squares are there?", "1", "one", 3, "number"))):
        qid = image_id * 10 + j
        questions.append({"image_id": image_id, "question": q,
                          "question_id": qid})
        answers.append({"question_id": qid, "image_id": image_id,
                        "answers": _answers(a, other, n_other),
                        "multiple_choice_answer": a, "answer_type": atype,
                        "question_type": q.split()[0].lower()})
      made[split].append((image_id, colour, big))
    with open(os.path.join(root, "annotations",
                           f"captions_{folder}.json"), "w") as f:
      json.dump({"images": images, "annotations": anns}, f)
    with open(os.path.join(root, f"v2_OpenEnded_mscoco_{folder}_questions.json"),
              "w") as f:
      json.dump({"questions": questions}, f)
    with open(os.path.join(root, f"v2_mscoco_{folder}_annotations.json"),
              "w") as f:
      json.dump({"annotations": answers}, f)
  return made
