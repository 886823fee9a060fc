"""How faithfully the report labeler (`rad_dino_hf.report.labeler`) labels the CheXpert labeler's own vocabulary.

Every CheXpert mention phrase (148, 14 observations) in five sentences ("There is X." / "No X." / "No evidence of X."
/ "Possible X." / "X cannot be excluded."), each checked against the label CheXpert's rules give it (see
`rad_dino_hf.report.labeler_agreement`). Prints a markdown table of per-observation agreement, the overall figure the
`report` command prints next to its finding F1, the labelling speed, and any disagreeing sentence.

    python benchmarks/labeler_agreement.py
"""

import time

from rad_dino_hf.report.labeler_agreement import agreement, markdown_table, phrase_cases


def main() -> None:
    cases = phrase_cases()
    start = time.perf_counter()
    result = agreement(cases)
    seconds = time.perf_counter() - start
    print(markdown_table(result))
    print(f"\nOverall agreement {100 * result.overall:.2f} % on {len(cases)} sentences, labelled in {seconds:.2f} s")
    for case, given in result.misses:
        print(f"disagrees: {case.sentence!r} {case.observation}: labelled {given}, CheXpert {case.expected}")


if __name__ == "__main__":
    main()
