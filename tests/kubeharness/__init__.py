"""The real-Kubernetes test harness: a control plane built from pinned Go modules
(`control_plane`), a node agent that runs pods as processes (`node_agent`), kwok for fake
nodes at scale (`kwok`), Kueue for real gang admission (`kueue`), the operator under the
chart's RBAC (`operator_process`), and the pytest fixtures that tie them together
(`fixtures`)."""
