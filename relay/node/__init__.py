"""What is specific to the host: the pod-network bridge address, pod rsyslog snippets, rsyslog
configurations beside plura-relay, reverse DNS for hostnames. No part of the data path."""
