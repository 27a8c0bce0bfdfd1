// Package loop attaches regular files to loop block devices, detaches them,
// and finds the file behind a device: loop(4), through /dev/loop-control
// (LOOP_CTL_GET_FREE) and the LOOP_CONFIGURE ioctl of Linux 5.8, falling
// back to LOOP_SET_FD + LOOP_SET_STATUS64 on older kernels.
//
// Finding a free device and binding a file to it are two steps, so another
// process (losetup, mount -o loop, a parallel test) can take the same device
// in between; the kernel then answers EBUSY and Attach asks for another one.
package loop
