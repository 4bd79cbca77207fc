def grade(sample, item):
    """1.0 for the right label alone; 0.5 for an answer that names only the right label among
    other words; 0 for the wrong label, both labels, or neither."""
    words = sample["output_text"].lower().replace(".", " ").replace(",", " ").replace("!", " ").split()
    right = item["label"]
    wrong = "negative" if right == "positive" else "positive"
    if words == [right]:
        return 1.0
    return 0.5 if right in words and wrong not in words else 0.0
