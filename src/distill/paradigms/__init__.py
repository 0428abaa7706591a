"""Distillation beyond one model and one task (the surveys' advanced paradigms).

- `graph`: node classification on a k-nearest-neighbour graph; GNN teachers, GNN and
  graph-free MLP students (GLNN), local-structure preservation (LSP);
- `lifelong`: class-incremental tasks learnt in sequence with Learning without Forgetting
  and Elastic Weight Consolidation (a pipeline scheme, `scheme: lifelong`);
- `ensemble`: ensemble compression (Bucilă et al. 2006) with MUNGE transfer data, and
  ensemble distribution distillation (scheme `ensemble_kd`);
- `federated`: clients share only predictions on a public set; a server model is distilled
  from their consensus (`distill federated`);
- `condense`: dataset distillation by distribution matching (`data.condense`);
- `interpret`: decision-tree and sparse-linear students of a neural teacher
  (`distill interpret`).
"""
