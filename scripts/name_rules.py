"""The rules that decide which names-dataset entries become shipped first names.

Pure functions on strings and numbers: ``scripts/extract_names.py`` feeds them names-dataset's
ranks and gender shares, and ``tests/test_names.py`` re-checks the shipped lexicon with the
rules that need no dataset. Nothing here imports names-dataset or mcu-sim.

The numbers were set by reading the lists at 1,000 names per country and gender (see
``docs/names.md``). "Rank" is names-dataset's rank of a name among all first names of a country
(1 = most common). The *head* of a list is its names ranked within ``HEAD_RANK``, and at least
its first ``HEAD_MIN_NAMES`` names: where names are written in another script the Latin-script
ones start deep in the ranking (South Korea: below rank 2,000) and their best are as common as
anyone's. Counts there are large and the entries read as names; in the *tail* the dataset's
noise grows and the stricter rules apply.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Container

HEAD_RANK = 500
HEAD_MIN_NAMES = 100
MIN_GENDER_SHARE = 0.8
MIN_AMBIGUOUS_SHARE = 0.6
MIN_TAIL_LETTERS = 3
SURNAME_RATIO_HERE = 2
SURNAME_RATIO_ANYWHERE = 10
TRUNCATION_MAX_LETTERS = 3
TRUNCATION_RANK_RATIO = 3.0
COMMON_ANYWHERE_RANK = 1000
SEPARATORS = " -'"


def words(text: str) -> list[str]:
    return text.split()


# Tokens ranked as first names that are not given names (or would read as a joke in a
# dialogue): abbreviations and honorifics, kinship words, common surnames with a gender
# skew, words and endearments, reduplicated nicknames. Compared word by word, after ``fold``.
NOT_A_NAME = frozenset(
    words(
        """
    md mohd muhd sk ch mr mrs ms dr eng sri haji hajji abu abo om um umm ummu abd abdul al el
    sa ma
    kumar kumari devi patel khan singh kaur shaikh sheikh syed malik raja rana babu
    love lovely princess prince honey baby queen king sweet cute
    bunda mamah mama papa bunga cinta putri
    china seven stone snow rain spring summer echo candy cherry coco
    meme momo lolo jojo koko gogo toto didi dodo nana lala mimi nono nona nony
    shosho tota mido medo hamo hema mody dody bosy koky mero mony tete soso
    mohmed muslim
    """
    )
)

# Per-country slips found by reading the lists: names-dataset's gender share is global, so a
# name can be male in one country and female in ours (Miki, Simone, Nicola); Korean users
# often split a given name into two words, leaving one syllable in the first-name field;
# ``ana`` is Arabic for "I" (``Ana Ahmed``) but the commonest Ana of Spain and Latin America.
_ARABIC_WORDS = frozenset({"ana"})
NOT_A_NAME_IN_COUNTRY = {
    "CN": frozenset({"li", "lemon", "fish"}),
    "JP": frozenset({"miki", "mika"}),
    "DE": frozenset({"simone"}),
    "BR": frozenset({"simone"}),
    "GB": frozenset({"nicola"}),
    "KR": frozenset(words("sung won seung young dong jong sang hyun hoon yoon jin min")),
    "EG": _ARABIC_WORDS,
    "SA": _ARABIC_WORDS,
    "AE": _ARABIC_WORDS,
}

# Countries whose names reach English text through a romanisation (Cyrillic, Arabic,
# Devanagari, Han, kana, Hangul): their romanised names use the 26 plain letters, so an accent
# there is decoration (``Ặĥɱěd``, ``Møhamed``) or another country's name (``Trâm``, ``Márcia``).
ROMANISED_COUNTRIES = frozenset(words("CN JP KR IN AE SA KZ EG RU"))
# Elsewhere: the accented letters of European orthographies (Latin-1 and Latin Extended-A:
# é, ñ, ç, ü, ł, ğ ...), not the phonetic or Vietnamese letters used as fancy text.
ORTHOGRAPHY_RANGES = ((0x00C0, 0x00FF), (0x0100, 0x017F))

# Countries where two given names in one field are a name (``Juan Carlos``, ``Maria Grazia``,
# ``Jean Pierre``); elsewhere a second word is a surname, a title or junk (``Ahmed Ali``,
# ``Cap Ahmed``, ``Dody De``). Hyphenated double names (``Hans-Peter``) are one word in every
# country's orthography. Korean given names are two syllables that users often write apart
# (``Young Ho``, ``Ju-Young``): they are checked as syllables, not as two names.
COMPOUND_NAME_COUNTRIES = frozenset(words("AR BR ES FR IT MX US"))
SYLLABLE_SPLIT_COUNTRIES = frozenset({"KR"})
# Cyrillic- and Arabic-script countries, where each user improvises the Latin spelling.
AD_HOC_SPELLING_COUNTRIES = frozenset(words("RU KZ EG SA AE"))
PARTICLES = frozenset(words("de del da das do dos di la las los y e"))

# Titles and kinship words found glued to a name (``Drahmed``, ``Aboomar``).
GLUED_PREFIXES = frozenset(words("dr eng engr mr mrs ms cap capt captain prof doc abo umm"))

VOWELS = set("aeiouy")

# Revised Romanization of Korean, syllable by syllable.
HANGUL_INITIALS = words("g kk n d tt r m b pp s ss - j jj ch k t p h")
HANGUL_MEDIALS = words("a ae ya yae eo e yeo ye o wa wae oe yo u wo we wi yu eu ui i")
HANGUL_FINALS = words("- k k k n n n t l k m l l l p l m p p t t ng t t k t p t")


# ------------------------------------------------------------------ spelling


def fold(text: str) -> str:
    """Lower-case, strip accents and separators: the key that spots spelling variants."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = (ch for ch in decomposed if not unicodedata.combining(ch) and ch not in SEPARATORS)
    return "".join(kept).lower()


def parts(name: str) -> list[str]:
    """The words of a name, split at spaces and hyphens (``Jean-Pierre`` -> Jean, Pierre)."""
    return name.replace("-", " ").split()


def is_latin(name: str) -> bool:
    """Every letter is a Latin letter (spaces, hyphens and apostrophes allowed)."""
    return all(ch in SEPARATORS or "LATIN" in unicodedata.name(ch, "") for ch in name)


def is_hangul(name: str) -> bool:
    return bool(name) and all("\uac00" <= ch <= "\ud7a3" for ch in name)


def romanize_hangul(name: str) -> str:
    """``영수`` -> ``Yeongsu`` (RR, no sound changes between syllables, as for given names)."""
    out: list[str] = []
    previous_final = ""
    for ch in name:
        code = ord(ch) - 0xAC00
        initial = HANGUL_INITIALS[code // 588]
        medial = HANGUL_MEDIALS[(code % 588) // 28]
        final = HANGUL_FINALS[code % 28]
        if initial == "-":
            initial = ""
        elif initial == "r" and previous_final == "l":
            initial = "l"  # ㄹㄹ is written ll
        final = "" if final == "-" else final
        out.append(initial + medial + final)
        previous_final = final
    return "".join(out).capitalize()


def tidy_particles(name: str) -> str:
    """``Maria Del Carmen`` -> ``Maria del Carmen``: particles are written in lower case."""
    return " ".join(w.lower() if fold(w) in PARTICLES else w for w in name.split(" "))


# ------------------------------------------------------------------ rules on the name alone


def outside_orthography(name: str, code: str) -> bool:
    """A letter the country's way of writing names does not use (``ROMANISED_COUNTRIES``)."""
    for ch in name:
        if ch in SEPARATORS or ch in string.ascii_letters:
            continue
        point = ord(ch)
        accented = any(low <= point <= high for low, high in ORTHOGRAPHY_RANGES)
        if code in ROMANISED_COUNTRIES or not accented or not ch.isalpha():
            return True
    return False


def listed_non_name(name: str, code: str) -> bool:
    """A word of it is on ``NOT_A_NAME``, or the whole name is on the country's own list."""
    local = NOT_A_NAME_IN_COUNTRY.get(code, frozenset())
    return fold(name) in local or any(fold(w) in NOT_A_NAME for w in parts(name))


def in_head(rank: int, kept_so_far: int) -> bool:
    """Whether the next name of a list, of this rank, belongs to its head (see module doc)."""
    return rank <= HEAD_RANK or kept_so_far < HEAD_MIN_NAMES


def too_short(name: str, tail: bool) -> bool:
    """No vowel, one letter, or two letters in the tail.

    Two-letter names in the head are real (``Yi``, ``Ai``, ``Ed``, ``Mo``); in the tail they are
    initials, syllables and fragments (``Aj``, ``Yh``, ``Ne``, ``Da``).
    """
    letters = fold(name)
    if len(letters) < 2 or not VOWELS & set(letters):
        return True
    return tail and len(letters) < MIN_TAIL_LETTERS


def not_one_given_name(name: str, code: str, singles: Container[str]) -> bool:
    """More words than a given name of that country has, or words that are not given names.

    ``singles`` holds the folded one-word first names of the dataset (any country, either
    gender: its per-country ranks cover a name's top ten countries only, so ``Carlos`` has no
    rank in Argentina, and ``Maria Jose`` is a woman's name). A double name must be two of
    them, of three letters or more, joined by a hyphen (any country) or a space
    (``COMPOUND_NAME_COUNTRIES``), with particles only between them (``Maria del Carmen``):
    that keeps ``Juan Carlos`` and drops ``Jose A`` and ``Ahmed Ali``.
    """
    words_ = parts(name)
    if len(words_) == 1:
        return False
    if code in SYLLABLE_SPLIT_COUNTRIES:
        return len(words_) > 2
    if " " in name and code not in COMPOUND_NAME_COUNTRIES:
        return True
    if fold(words_[0]) in PARTICLES or fold(words_[-1]) in PARTICLES:
        return True
    core = [w for w in words_ if fold(w) not in PARTICLES]
    if len(core) != 2:
        return True
    return any(len(fold(w)) < MIN_TAIL_LETTERS or fold(w) not in singles for w in core)


# ------------------------------------------------------------------ rules on the dataset's numbers


def weak_gender_share(share: float, rank: int, surname_rank: int | None, tail: bool) -> bool:
    """The wanted gender's share is too low for a name of this rank.

    Below ``MIN_AMBIGUOUS_SHARE`` always. Between that and ``MIN_GENDER_SHARE`` a name passes
    only in the head and only when it is not as common a surname there: surnames carry no
    gender, so their share sits near one half (``Wang``, ``Chen``), while given names shared by
    both genders abroad (``Jean``, ``Nikita``) are common. In the tail such shares are mostly
    words and nicknames (``Prosto`` 0.64, ``Lawyer`` 0.61, ``Woodpecker`` 0.68). A stricter
    tail threshold (0.9) was tried and dropped: it cost many real names whose share is global
    (``Jocelyn`` is male in France, 0.88 female) and pushed lists into deeper, noisier ranks.
    """
    if share < MIN_AMBIGUOUS_SHARE:
        return True
    if share >= MIN_GENDER_SHARE:
        return False
    return tail or (surname_rank is not None and surname_rank <= rank)


def surname_first(
    rank: int, surname_rank: int | None, best_rank: int, best_surname_rank: int | None, tail: bool
) -> bool:
    """In the tail, the name is much more common as a surname, in this country or anywhere.

    Here: it ranks ``SURNAME_RATIO_HERE`` times higher among the country's surnames than its
    first names (``Ivanova``, ``Murata``, ``Solanki``). Anywhere: its best surname rank in any
    country is ``SURNAME_RATIO_ANYWHERE`` times its best first-name rank (``Traore``,
    ``Hansen``, ``Fox``). The margins are wide because Chinese users often swap given name
    and surname (``Weidong``) and patronymic cultures use given names as surnames
    (``Pierre``, ``Amin``). In the head a name that is also a common surname is still a common
    given name (``Lewis`` in the United Kingdom).
    """
    if not tail:
        return False
    here = surname_rank is not None and surname_rank * SURNAME_RATIO_HERE < rank
    anywhere = (
        best_surname_rank is not None and best_surname_rank * SURNAME_RATIO_ANYWHERE < best_rank
    )
    return here or anywhere


def glued(name: str, tail: bool, earlier: Container[str]) -> bool:
    """In the tail, a title or kinship word written onto a kept name as one word.

    ``Drmahmoud``, ``Engahmed``, ``Mrmohamed``, ``Aboahmed`` ("father of Ahmed"); ``earlier``
    holds the folded kept names, and the name after the title must have four letters or more
    (``Omar`` is not ``Om`` + ``Ar``; ``om`` is left out anyway, for ``Omprakash``). It costs
    the odd real spelling (``Abobakr``). Two names glued together were tried as well and
    dropped: they are too often one name (``Alexandre``, ``Rosemary``, ``Sherzodbek``).
    """
    if not tail or any(ch in SEPARATORS for ch in name):
        return False
    folded = fold(name)
    return any(
        folded.startswith(title)
        and len(folded) - len(title) >= 4
        and folded[len(title) :] in earlier
        for title in GLUED_PREFIXES
    )


class PrefixIndex:
    """The best rank among kept names that extend a prefix by 1-3 letters (``Kseniy``)."""

    def __init__(self) -> None:
        self._best: dict[str, int] = {}

    def add(self, name: str, rank: int) -> None:
        folded = fold(name)
        for cut in range(1, TRUNCATION_MAX_LETTERS + 1):
            prefix = folded[:-cut]
            if len(prefix) >= 2:
                self._best[prefix] = min(rank, self._best.get(prefix, rank))

    def longer_rank(self, name: str) -> int | None:
        return self._best.get(fold(name))


def truncated(rank: int, best_rank: int, longer_rank: int | None) -> bool:
    """A cut-off copy of a better-ranked name of the same list (``Kseniy`` of ``Kseniya``).

    ``longer_rank`` is the rank of the kept name it is a prefix of (see :class:`PrefixIndex`),
    ``best_rank`` the name's best rank in any country. Dropped when it is much rarer here
    (``TRUNCATION_RANK_RATIO``) and not a common name anywhere (``COMMON_ANYWHERE_RANK``):
    fragments live only where the full name does, while short forms such as ``Ann``, ``Dan``
    or ``Carl`` are top names somewhere.
    """
    if longer_rank is None:
        return False
    return rank >= TRUNCATION_RANK_RATIO * longer_rank and best_rank > COMMON_ANYWHERE_RANK


class TypoIndex:
    """Kept names by their one-letter deletions: finds a kept name one edit away.

    Two names share a one-letter deletion when one has a letter more (``Mhammed``), a letter
    less (``Mstafa``), a letter changed (``Ahmef``) or two neighbours swapped.
    """

    def __init__(self) -> None:
        self._best: dict[str, int] = {}

    @staticmethod
    def _keys(folded: str) -> set[str]:
        return {folded} | {folded[:i] + folded[i + 1 :] for i in range(len(folded))}

    def add(self, name: str, rank: int) -> None:
        for key in self._keys(fold(name)):
            self._best[key] = min(rank, self._best.get(key, rank))

    def nearest_rank(self, name: str) -> int | None:
        folded = fold(name)
        if len(folded) < 4:
            return None  # a three-letter name is one edit from too many others
        return min((self._best[k] for k in self._keys(folded) if k in self._best), default=None)


def respelt(code: str, rank: int, best_rank: int, nearest_rank: int | None) -> bool:
    """Where Latin spellings are improvised, a rare spelling one edit from a kept name.

    In ``AD_HOC_SPELLING_COUNTRIES`` people transcribe their Cyrillic or Arabic name as they
    please, so the tail fills with one-edit respellings of common names (``Mhmoud``,
    ``Mstafa``, ``Tatyna``, ``Nastay``) that read as typos. Same gate as :func:`truncated`.
    Not applied where the romanisation is a standard (pinyin, Hepburn, Korean) or the names are
    Latin-script anyway: there one edit separates distinct names (``Yuki``/``Yuka``,
    ``Marla``/``Carla``), and trying it there dropped mostly real names.
    """
    if code not in AD_HOC_SPELLING_COUNTRIES or nearest_rank is None:
        return False
    return rank >= TRUNCATION_RANK_RATIO * nearest_rank and best_rank > COMMON_ANYWHERE_RANK


def string_rule_failures(name: str, code: str, tail: bool) -> list[str]:
    """The rules on the name alone that ``name`` fails (the tests re-check the lexicon with it)."""
    checks = {
        "not latin script": not is_latin(name),
        "orthography": outside_orthography(name, code),
        "listed non-name": listed_non_name(name, code),
        "too short": too_short(name, tail),
    }
    return [rule for rule, failed in checks.items() if failed]
