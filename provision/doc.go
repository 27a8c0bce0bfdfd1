// Package provision defines base images by ansible playbooks and keeps them
// up to date: it finds the playbooks (NAME.yaml or NAME.yml in the playbook
// directories), reads the nspawn_runner_* variables of their first play,
// runs ansible-playbook against an image tree through systemd-nspawn, and
// maintains images on a copy that is swapped in atomically only when the
// playbook succeeds, so a running or starting job never sees a half-done
// image.
//
// ansible-playbook is an external program: it reaches the tree with its
// chroot connection, whose ansible_chroot_exe is a wrapper script running
// each command in the tree with systemd-nspawn (systemd-nspawn(1)), as the
// original nspawn-runner did.
package provision
