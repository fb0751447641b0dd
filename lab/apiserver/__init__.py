"""The lab's Kubernetes/OpenShift API server: objects stored in the lab's real etcd, served over
HTTPS with Kubernetes conventions so that kubectl, `oc`-style tables and the Python client work
unchanged. Entry points: `storage.EtcdStore`, `objects.Objects`, `server.ApiServer`."""
