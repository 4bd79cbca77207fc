# A python grader for the evals tutorial: 1.0 when the answer talks like a pirate.
PIRATE_WORDS = ("arr", "matey", "ahoy", "me hearty", "ye ", "aye", "yo ho", "treasure", "doubloon", "davy jones",
                "landlubber", "seas", "galleon", "shiver")


def grade(sample, item):
    text = sample["output_text"].lower()
    return 1.0 if any(word in text for word in PIRATE_WORDS) else 0.0
