// SPDX-License-Identifier: Apache-2.0
//! The sleeve data plane without I/O: the datagram format ([`frame`]), the
//! switch that decides where frames go ([`switch`]), how frames are batched
//! and cut into datagrams ([`batch`]), the MTU arithmetic ([`mtu`]), the UDP
//! path state ([`path`]), the datagram encryption per neighbour
//! ([`sealer`]), and what carries TCP super-frames ([`offload`] headers,
//! fragments put back together by [`reassembly`]). Everything here decides;
//! nothing does a system call. The TAP and UDP threads that drive it live in
//! [`crate::router::sleeve`].

pub mod batch;
pub mod frame;
pub mod mtu;
pub mod offload;
pub mod path;
pub mod reassembly;
pub mod sealer;
pub mod switch;
