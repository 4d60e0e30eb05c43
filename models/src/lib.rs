//! Pose networks (YOLO11-pose, YOLOv8-pose) on Candle: weights fetch/convert/load, letterbox, decode, NMS
