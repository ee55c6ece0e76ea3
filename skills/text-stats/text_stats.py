"""text-stats skill: reads {"text": ...} as JSON on stdin, writes the result as JSON."""

import json
import re
import sys
from collections import Counter

STOP_WORDS = set(
    re.findall(
        r"\w+",
        "a an and are as at be but by for from has have he her his i in is it its of on or our "
        "she that the their them they this to was we were what when which who will with you your",
    )
)


def count(params: dict) -> dict:
    text = params["text"]
    return {
        "characters": len(text),
        "words": len(re.findall(r"\w+", text)),
        "lines": len(text.splitlines()),
        "sentences": len([s for s in re.split(r"[.!?]+", text) if s.strip()]),
    }


def keywords(params: dict) -> dict:
    words = [w for w in re.findall(r"[a-z0-9']+", params["text"].lower()) if w not in STOP_WORDS]
    top = Counter(words).most_common(params.get("top", 10))
    return {"keywords": [{"word": word, "count": n} for word, n in top]}


if __name__ == "__main__":
    tool = {"count": count, "keywords": keywords}[sys.argv[1]]
    json.dump(tool(json.load(sys.stdin)), sys.stdout)
