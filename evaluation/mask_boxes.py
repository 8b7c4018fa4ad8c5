"""Boxes read off the model's mask (--boxes_from_mask): one box per connected component of the thresholded mask, so
that a phrase naming several objects can be answered with several boxes. Objects whose masks touch merge into one
component, hence one box (docs/generalized.md)."""
import cv2
import numpy as np

# Components smaller than this fraction of the image are dropped (specks of the threshold, not objects).
MIN_COMPONENT_AREA = 0.002


def boxes_from_mask(prob, threshold, min_area=MIN_COMPONENT_AREA):
    """prob: float [H, W] probabilities at the image's resolution -> [[x1, y1, x2, y2, score]] in image pixels, one
    per 8-connected component of prob > threshold covering at least min_area of the image, score its mean
    probability; highest score first."""
    binary = (prob > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    smallest = min_area * prob.shape[0] * prob.shape[1]
    sums = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=count)  # every component's in one pass
    boxes = []
    for label in range(1, count):  # 0 is the background
        x, y, w, h, area = (int(v) for v in stats[label])
        if area < smallest:
            continue
        boxes.append([float(x), float(y), float(x + w), float(y + h), round(float(sums[label] / area), 4)])
    return sorted(boxes, key=lambda b: -b[4])
