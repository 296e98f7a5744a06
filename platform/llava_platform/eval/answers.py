"""Turning a model's free-text answer into what a benchmark scores, as LLaVA-1.5's evaluation scripts do.

    vqa_normalize("Two dogs.")                    -> "2 dogs"        (VQAv2 / GQA / TextVQA answer processing)
    yes_no("No, there is no dog in the image.")   -> "no"            (POPE)
    option_letter("The answer is B.", 4)          -> "B"             (ScienceQA / MMBench), None when absent

Facts from the official evaluations: the VQA answer processing (lower case, punctuation rules, number
words to digits, articles dropped, its contraction table), POPE's reading of an answer (the first
sentence; "no" if it holds the word No, no or not, else "yes"), and the option-letter forms ScienceQA's
scorer accepts ("B", "B. text", "... The answer is B."). An answer with no letter is None: scored
wrong and counted, never guessed (as LLaVA's ScienceQA scorer does).
"""

from __future__ import annotations

import re

__all__ = ["vqa_normalize", "yes_no", "option_letter", "OPTION_LETTERS"]

OPTION_LETTERS = "ABCDEFGHIJ"
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # a period not followed by a digit (as published: its look-behind is a typo)
_COMMA_IN_NUMBER = re.compile(r"(?<=\d)(\,)+(?=\d)")
_ANSWER_IS = re.compile(r"The answer is ([A-Z])\.")

CONTRACTIONS = {  # the VQA evaluation's table, as published (its irregular entries included)
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't", "couldn'tve":
    "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt":
    "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "hed":
    "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows":
    "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt":
    "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt":
    "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt":
    "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've":
    "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've":
    "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell":
    "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd":
    "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve":
    "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens":
    "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've":
    "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've":
    "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've":
    "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've"
}  # fmt: skip


def vqa_normalize(answer: str) -> str:
    """The VQA evaluation's answer processing: what VQAv2-style accuracy compares."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _punctuation(text)
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def _punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:  # a mark next to a space (or any comma inside a number) goes; elsewhere it splits words
        if p + " " in text or " " + p in text or _COMMA_IN_NUMBER.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def yes_no(answer: str) -> str:
    """POPE's reading: the first sentence, commas dropped; "no" if it has the word No / no / not, else "yes"."""
    first = answer.split(".")[0] if "." in answer else answer
    words = first.replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def option_letter(answer: str, num_options: int) -> str | None:
    """The option a multiple-choice answer picks ("A".."J" within num_options), or None when it names none."""
    letters = OPTION_LETTERS[:num_options]
    text = answer.strip()
    if text in letters:
        return text
    if len(text) >= 3 and text[0] in letters and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    if found and found[0] in letters:
        return found[0]
    return None
