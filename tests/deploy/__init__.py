"""Tests of what is deployed beside plura-relay: rsyslog.d/, conf/nginx/ and conf/k8s/."""
