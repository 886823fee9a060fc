"""The linear probe chooses its regularisation by cross-validation whose folds keep each patient on one side."""

import numpy as np

from rad_dino_hf.probe import fit_linear_probe

N_PATIENTS, PER_PATIENT = 22, 3  # 22 is prime to the 5 folds: interleaving cannot line up with them


def _patient_memorisation_task():
    """Each patient's images share a random fingerprint and a random label: predictable only for a seen patient.
    Images are interleaved (patient i % 22), so folds that ignore patients put every patient on both sides."""
    rng = np.random.default_rng(0)
    fingerprints = rng.normal(size=(N_PATIENTS, 16))
    patient_labels = rng.permutation([0, 1] * (N_PATIENTS // 2))
    patients = np.tile(np.arange(N_PATIENTS), PER_PATIENT)
    features = fingerprints[patients] + 0.05 * rng.normal(size=(len(patients), 16))
    return features, patient_labels[patients], np.array([f"p{p}" for p in patients])


def test_cross_validation_folds_keep_patients_apart():
    features, labels, patients = _patient_memorisation_task()
    classifier = fit_linear_probe(features, labels, patients)
    folds = classifier[-1].cv
    assert len(folds) == 5
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(len(labels)))  # every image is tested once
    for train, test in folds:
        assert not set(patients[train]) & set(patients[test])
    # Unseen patients carry no signal: the cross-validated accuracy stays near chance for every C (a leaky split
    # would score ~1 by recognising the patients).
    scores = np.asarray(classifier[-1].scores_).reshape(len(folds), -1)
    assert scores.mean(axis=0).max() <= 0.75, scores.mean(axis=0)
