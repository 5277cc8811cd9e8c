"""The calibration card: render it (`card`), find it in a photo (`detect`), measure areas in mm² with it (`scale`).

Depends only on numpy, OpenCV and Pillow, so inference/ and serve/ import it without torch or Lightning.
"""
