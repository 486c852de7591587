"""Quick start: what was built, and frames inserted into a small packed batch of videos."""

import json

import torch

import flowception_ext as fe

print("build_info:", json.dumps(fe.build_info(), indent=1))
videos = fe.PackedVideos.from_list([torch.zeros(2, 1, 2, 2), torch.ones(3, 1, 2, 2)])
print("before:", videos)
counts = torch.tensor([1, 0, 0, 2, 0])  # one new frame after frame 0 of video 0, two after frame 1 of video 1
grown, src_pos, new_pos = videos.insert(counts, seed=0)
print("after: ", grown)
print("old frames moved to rows", src_pos.tolist(), "; new noise frames at rows", new_pos.tolist())
print("times:", grown.times.tolist())
