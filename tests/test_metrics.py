import numpy as np
import pytest

from p3d_keras.jobs.metrics import clip_and_video_hits


def test_hits_against_hand_computed_values():
    scores = np.array([
        [0.6, 0.3, 0.1],  # video a, label 0: clip top-1 hit
        [0.1, 0.5, 0.4],  # video a, label 0: miss at 1 and 2
        [0.2, 0.7, 0.1],  # video b, label 2: ranks 3rd, miss at 1 and 2
        [0.1, 0.2, 0.7],  # video b, label 2: hit
    ])
    labels = [0, 0, 2, 2]
    ids = ["a", "a", "b", "b"]
    # Video a mean: [.35, .4, .25] -> label 0 ranks 2nd; video b mean: [.15, .45, .4] -> label 2 ranks 2nd.
    result = clip_and_video_hits(scores, labels, ids, k=(1, 2))
    assert result == {"num_clips": 4, "num_videos": 2, "clip_hit@1": 0.5, "video_hit@1": 0.0,
                      "clip_hit@2": 0.5, "video_hit@2": 1.0}


def test_conflicting_labels_raise():
    with pytest.raises(ValueError, match="Received: several labels for video_id='a'"):
        clip_and_video_hits(np.eye(2), [0, 1], ["a", "a"])
    with pytest.raises(ValueError, match="Received: scores.shape"):
        clip_and_video_hits(np.zeros(3), [0], ["a"])
