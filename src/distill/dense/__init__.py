"""Dense prediction: object detection and semantic segmentation, and their distillation.

- `scenes`: an offline testbed of 64x64 canvases composed from real handwritten digits
  (scikit-learn's digits), with boxes and per-pixel masks as ground truth;
- `models`: a compact anchor-free one-stage detector (FCOS-style, two pyramid levels) and a
  small encoder-decoder segmentation network;
- `detection`: target assignment, the detector's loss, decoding, NMS and COCO-style mAP;
- `segmentation`: mean IoU.

The distillation losses live with the others in `distill.losses.dense`; scheme `dense`
(distill.schemes.dense) trains either task, alone or from a teacher, on the one loop.
"""
