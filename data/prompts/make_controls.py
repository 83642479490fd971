"""Regenerate the control prompt sets (random.txt, repeated.txt) deterministically: python make_controls.py"""
import random
import string

rng = random.Random(0)
with open("random.txt", "w") as f:
    for _ in range(20):
        words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 7))) for _ in range(40)]
        f.write(" ".join(words) + "\n")
words = ["the", "apple", "house", "blue", "run", "seven", "and", "water", "music", "table",
         "quickly", "paper", "green", "dog", "light", "river", "open", "stone", "cloud", "bread"]
with open("repeated.txt", "w") as f:
    for w in words:
        f.write(" ".join([w] * 40) + "\n")
