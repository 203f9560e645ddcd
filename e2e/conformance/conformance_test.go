// The upstream Gateway API conformance suite, as Parapet runs it (`make conformance`):
// the suite's own flags select the GatewayClass, profiles, features and report.
package conformance

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
