// Package sim holds what stands in for Azure and for the devices in the field, and never runs in
// production: hub is localhub's IoT Hub emulator, device a simulated device and fleet a simulated
// fleet of them. The product's own libraries are internal's other packages; the device contract
// both sides share is internal/protocol.
package sim
