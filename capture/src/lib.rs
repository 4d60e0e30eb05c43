//! Capture agent: frame sources (video, camera, images, synthetic), pacing, QUIC streaming with resume
