"""The English LDNOOBW list exactly as C4 used it: the `en` file of
github.com/LDNOOBW/List-of-Dirty-Naughty-Obscene-and-Otherwise-Bad-Words at commit
25e679f03d96baa721cde20db9944649e8d0a844 (2016-04-06, "Added shitblimp"; 377 entries; sha256 of the
file a506cbcf8a31935b122299f3bb1d32be6db3d0ad498765d28f365dfc4f4d7b8c).

tensorflow_datasets' c4.py (version 3.0.1, the code the released C4 en was built with) pins that
commit as _EN_BADWORDS_URL, "Use older 'en' file for reproducibility of the original C4", while its
other languages use a 2020 commit; c4_utils reads it as `l.strip() for l in f` into a set. Every
entry is also in the newer 403-entry list (pipeline/sources/ldnoobw.py), which adds 26 more
("sexual", "sexuality", "sexually", "horny", "whore", ...): c4_quality's `bad_words: ldnoobw_2020`.

By Shutterstock; licensed CC BY 4.0 (creativecommons.org/licenses/by/4.0/). The words are matched,
never shown; the list is the newer file's entries without the ones added since (below), not a second copy.
"""

from pipeline.sources.ldnoobw import LDNOOBW_EN

# The 26 entries the list gained after 25e679f. Both files are sorted the same way, so the 2016 file
# is the newer one without them, entry for entry and in order (tests/test_c4.py checks the result
# against the pinned file's sha256).
ADDED_AFTER_C4: frozenset[str] = frozenset({
    "bangbus", "beastiality", "cialis", "cumshot", "cumshots", "fag", "gangbang", "horny", "livesex",
    "masturbating", "masturbation", "mong", "nsfw", "nutten", "pikey", "sexcam", "sexual", "sexually",
    "sexuality", "spastic", "thumbzilla", "viagra", "voyeurweb", "voyuer", "whore", "worldsex",
})

LDNOOBW_EN_C4: tuple[str, ...] = tuple(word for word in LDNOOBW_EN if word not in ADDED_AFTER_C4)
